"""Frozen teachers behind one interface, built by name, and the on-disk teacher feature store."""

from vfss_agglo_bundle.teachers.base import Teacher, TeacherBuilder, TeacherOutput, hash_state_dict
from vfss_agglo_bundle.teachers.registry import TEACHERS, build_teacher, build_teachers, expected_weight_path
from vfss_agglo_bundle.teachers.store import LoadTeacherFeaturesd, TeacherFeatureReader, TeacherFeatureStore, fill_store

__all__ = [
    "TEACHERS",
    "LoadTeacherFeaturesd",
    "Teacher",
    "TeacherBuilder",
    "TeacherFeatureReader",
    "TeacherFeatureStore",
    "TeacherOutput",
    "build_teacher",
    "build_teachers",
    "expected_weight_path",
    "fill_store",
    "hash_state_dict",
]
