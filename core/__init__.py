"""What both the API and the workers need: settings, the database schema and sessions,
the artifact store, API keys, ids and file validation. Nothing here runs models or serves HTTP."""
