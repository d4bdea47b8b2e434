"""The one list of node executables: executable name -> 'module:function'.

setup.py reads this file with `runpy.run_path` to make one console script per node (what
`ros2 run qail_ros NAME` and launch files' `executable=` name), and the embedded launcher
(`qail-ros launch`) reads it to start the same executables. Keep it a plain dict with no
imports, so reading it never imports the package.

Every module listed here defines `main(args=None)` (normally `return run_node(TheNode, args)`),
ends with `if __name__ == '__main__': sys.exit(main())` (the launcher runs `python -m MODULE`),
and holds exactly one `Node` subclass (what `qail-ros launch --composed` instantiates).
"""

NODES = {
    'camera_source': 'qail_ros.nodes.camera_source:main',
    'image_policy': 'qail_ros.nodes.image_policy:main',
    'power_monitor': 'qail_ros.nodes.power_monitor:main',
    'fp_recorder': 'qail_ros.nodes.fp_recorder:main',
    'cilrs_policy': 'qail_ros.nodes.cilrs_policy:main',
    'vla_policy': 'qail_ros.nodes.vla_policy:main',
    'env_bridge': 'qail_ros.nodes.env_bridge:main',
    'physics_bridge': 'qail_ros.nodes.physics_bridge:main',
    'state_policy': 'qail_ros.nodes.state_policy:main',
}
