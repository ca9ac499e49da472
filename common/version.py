"""Cairn's version, in one place: the package metadata and the sandbox image tag both read it.

Bumping it makes `cairn sandbox build` produce a new image tag, so a worker never runs code in an image
built for a different version of the sandbox bootstrap.
"""

__version__ = "0.1.0"

# The tag `cairn sandbox build` produces and the sandbox activity runs; see sandbox_images/build.py.
SANDBOX_IMAGE = f"cairn-sandbox:{__version__}"
