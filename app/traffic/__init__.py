"""Route and pick: which service a request is for, and which host gets it.

routing.py maps Host to a service, balancer.py picks a host, health.py keeps
hosts in or out of rotation, retry.py decides whether a failed try is tried again.
"""
