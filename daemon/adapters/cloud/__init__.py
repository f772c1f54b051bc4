"""The cloud adapter: the official SDK behind the core's ``Cloud`` port."""
