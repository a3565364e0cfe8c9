"""Prompted 8x8 digits on the same core: the class-conditional flow, image rewards and the task."""
