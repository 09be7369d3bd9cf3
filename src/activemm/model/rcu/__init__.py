"""kernel/rcu/: the part of RCU the model needs (callbacks that free an mm)."""
