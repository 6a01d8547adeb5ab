"""Timers over rq: arming and disarming scheduled calls, and the rq worker that runs them.

Its own package beside bus/, not inside it: rq is a second library with its own keys and its own
wire format, and the bus knows nothing of it. It depends on bus/ (the connection it is handed,
errors translated the bus's way), never the other way round; workers/ reach rq only through it.
"""
