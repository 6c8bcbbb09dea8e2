"""The HTTP API (aiohttp): routes per resource, auth, validation, RFC 9457 errors, OpenAPI.

It never runs models or torch: work goes to the workers through Postgres and the broker.
"""
