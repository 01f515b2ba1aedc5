"""How runs are scored: Kaggle's metrics (`metrics`) and the validation soundscapes per fold (`valsets`)."""
