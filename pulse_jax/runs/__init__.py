"""Launch plumbing: flags (`cli`), a launch's settings (`config`), the one work loop of runs
and sweeps (`engine`, `sweep`), the manifest (`store`), the output folder (`layout`), input
folders (`inputs`), many hosts (`distributed`), the progress line (`progress`) and JAX's
persistent compilation cache (`compile_cache`). The search itself never imports from here."""
