"""Training: the model glue, the train and eval steps, the run loop and what a run writes."""
