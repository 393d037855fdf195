"""The web console at `/console`: OIDC sign-in for admins, a server-side session, packaged static assets."""
