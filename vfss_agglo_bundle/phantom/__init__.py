"""The phantom: synthetic VFSS studies of one swallow with annotator-style masks and the kinematics they show, one
module per concern: :mod:`~.anatomy` (the simulator's settings and what one study draws from them), :mod:`~.shapes`
(plane geometry and outline templates), :mod:`~.timing` (the swallow's states over its phase), :mod:`~.scene` (one
frame's polygons), :mod:`~.render` (the X-ray image and labels of a frame, a whole study), :mod:`~.truth` (a study's
ground-truth kinematics) and :mod:`~.dataset` (a phantom dataset on disk). Nothing in :mod:`vfss_agglo_bundle.data`
imports it: reading user data never loads the simulator.
"""
