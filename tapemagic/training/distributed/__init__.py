"""Training under a `tf.distribute` strategy: replicas, lockstep across workers, the cluster."""
