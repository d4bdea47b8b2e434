"""qail_ros nodes: one module per node, one `Node` subclass each, `main()` = `run_node(...)`.

`registry.NODES` lists them (executable name -> 'module:function'); setup.py and the embedded
launcher both read it.
"""
