"""Reports: what people look at. Clients of the model; they only read its state and events."""
