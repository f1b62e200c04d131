"""Everything that runs where the model is: loading, sites, interventions, training."""
