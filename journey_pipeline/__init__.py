"""journey-pipeline: a closed-loop customer journey platform on Dagster.

observe -> features -> decide -> act -> learn, on embedded stores by default and on
PostgreSQL, Redis and Kafka in the production profile.
"""

__version__ = "0.1.0"
