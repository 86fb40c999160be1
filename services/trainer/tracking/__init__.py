"""Experiment tracking, opt-in: MLflow (runs, sweeps as parent runs, the Model Registry) and
TensorBoard. ``trackers`` builds one attempt's ``RunTracking`` from the settings; the loggers
never make training wait; ``model_registry`` mirrors promotions. Tracking failures are counted
and logged, never raised into training.
"""
