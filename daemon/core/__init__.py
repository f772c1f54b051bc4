"""The pure core: values, rules, the config schema and the ports. No clock, no I/O, no
adapter library; everything else may import it."""
