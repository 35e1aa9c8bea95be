"""The pass API, the registry, plugins, presets, the pass manager and its report."""
