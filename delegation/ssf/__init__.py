"""The OpenID SSF 1.0 transmitter: revocations told to resource servers as CAEP Security Event Tokens, by poll
(RFC 8936) or push (RFC 8935), each stream about its receiver's own resources only."""

from .seams import SetSigner, SsfStore, StreamTimings
from .transmitter import Transmitter

__all__ = ["SetSigner", "SsfStore", "StreamTimings", "Transmitter"]
