"""2D flows on the same core: the closed-form Gaussian mixture (the core's test oracle), MLP flows, and the task."""
