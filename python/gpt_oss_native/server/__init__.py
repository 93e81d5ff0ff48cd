"""The OpenAI-compatible HTTP server: Responses and Chat Completions over harmony (``create_app`` in app.py).

Needs the ``server`` extra (fastapi, uvicorn); ``gpt-oss-native serve`` runs it.
"""
