"""`cairn serve`: the multi-tenant HTTP API, its credentials and its database."""
