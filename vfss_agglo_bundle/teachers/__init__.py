"""Frozen teachers behind one interface, built by name (lazily), and the on-disk teacher feature store.

Importing this package imports no teacher family: each family's module and library load when it is built.
"""

from vfss_agglo_bundle.teachers.base import Teacher, TeacherBuilder, TeacherOutput, TeacherSpec
from vfss_agglo_bundle.teachers.registry import TEACHERS, build_teacher, build_teachers, expected_weight_path
from vfss_agglo_bundle.teachers.store import TeacherFeatureStore, fill_store

__all__ = [
    "TEACHERS",
    "Teacher",
    "TeacherBuilder",
    "TeacherFeatureStore",
    "TeacherOutput",
    "TeacherSpec",
    "build_teacher",
    "build_teachers",
    "expected_weight_path",
    "fill_store",
]
