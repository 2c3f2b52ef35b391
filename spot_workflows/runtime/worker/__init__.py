"""What runs beside the user's command in the worker: ``spot-run`` and termination notices."""
