"""The whole-slide path: a slide in, every tissue tile's features out, on the serving instance itself.

`options` parses the request's options, `reader` reads regions at a target resolution, `tissue` finds
tissue with the tissue-seg runner and lays the tile grid, `writers` writes HDF5 or Zarr, `job` runs the
stages with reading overlapped with the forward passes, `http` is the server's glue.
"""
