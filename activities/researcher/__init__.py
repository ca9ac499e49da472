"""The researcher graph's activity side: its model turns, its tools and its finding writer.

The graph itself, with the routers and working memory that replay in the workflow, is in
workflows/researcher/; the nodes here do the I/O and run as activities.
"""

from activities.researcher.nodes import ResearcherNodes

__all__ = ["ResearcherNodes"]
