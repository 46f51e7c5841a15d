"""The node's default configuration files (node.toml, classify.toml, model/ and train/ configs), shipped in the
package as ``codebrain_node.configs`` and read with importlib.resources."""
