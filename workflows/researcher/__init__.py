"""The researcher sub-agent's workflow side: ResearcherWorkflow (workflow.py) runs the LangGraph graph
(graph.py) whose working memory (memory.py) replays in the workflow; its I/O nodes are in
activities/researcher/.

Importing this package imports nothing: the workflow sandbox passes graph.py and memory.py through,
and must not drag the workflow module in with them.
"""
