"""The consumer project's entry point: see consumer.py."""

import consumer

consumer.main()
