"""Types, names and configuration shared by workflows, activities, the worker and the client."""
