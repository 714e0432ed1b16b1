"""The role handlers: what each consumer does with its messages, with no pika in sight.

`commands.CommandRole` (the worker: a command in, a reply and an event out;
with `outcomes`, what the service makes of a command, `refusals`, what is
refused before it is served, and `answers`, the messages it answers with),
`logwriter.LogWriterRole` (the logger: events in, lines in the event log),
`replay.ReplayRole` (the replay consumer: a request in, a stream of events
out; its filters in `replay_filter`), and `messages`, the plain message types
they exchange with thelca.amqp.
"""
