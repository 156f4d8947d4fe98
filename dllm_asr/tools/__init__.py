"""Tools beside the library: the synthetic corpus builder, real recordings, the slice probe."""
