"""DEMO ONLY: a demo identity provider, a demo SPIFFE issuer, a demo mail API and the `deputy demo` story.

Installed as the `deputy_examples` package so that `deputy serve --dev` and `deputy demo` work after
`pip install .`. Nothing here is fit for production: keys are throwaway and stored unprotected.
"""
