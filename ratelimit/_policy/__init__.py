"""Policy internals: charges per rule, the Envoy descriptor actions, and verified JWT
identities (the verifier, the JWKS cache and its bounded HTTP fetch).

The public policy modules (``rules``, ``matchers``, ``keys``, ``headers``, ``envoy``,
``enforce``, ``decorators``) sit beside this package and build on it.
"""
