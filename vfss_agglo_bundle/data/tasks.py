"""The default VFSS task list (one label channel per task, multi-label)."""

DEFAULT_TASKS: tuple[str, ...] = (
    "bolus",
    "pharynx",
    "mandible",
    "hyoid",
    "epiglottis",
    "c1",
    "c2",
    "c3",
    "c4",
    "c5",
    "c6",
    "c7",
)
NUM_DEFAULT_TASKS: int = len(DEFAULT_TASKS)
