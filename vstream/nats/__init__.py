"""The distributed mode on NATS JetStream (``pip install 'vstream[nats]'``).

``vstream ingest``/``publish`` put trades into stream ``VSTREAM_TRADES``; ``vstream worker``
processes share the instruments through leases and publish bars with their checkpoints as
atomic batches into ``VSTREAM_BARS``. See README "Scale out". Importing this package does not
import ``nats-py``; its modules do so only when they talk to a server.
"""
