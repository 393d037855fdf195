"""The protocol core: RFC 8693 token exchange, token verification and minting. No web framework, no storage."""
