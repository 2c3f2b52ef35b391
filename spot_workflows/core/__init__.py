"""Pure core: value types, classifier, planner. No I/O, no clock reads, no cloud or engine imports."""
