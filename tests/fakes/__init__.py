"""Local fake servers the tests talk to over real sockets."""
