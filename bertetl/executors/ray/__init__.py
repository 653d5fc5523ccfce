"""The Ray executor: the engine's stages as a Ray Data pipeline. The only package that imports
Ray; importing it without the `ray` extra raises ImportError."""
