"""The pipeline's services, a module per stage, in the pipeline's order:

- fanout: the workflow worker's fan-out of a trigger event (stage 2), and the
  notifications the subscriber worker creates (stage 3);
- echo: the echo worker, which asks the bridge for a notification's next step (stage 4);
- bookkeeping: the step bookkeeping the message worker calls (stage 5);
- operations: an admin's retry, and a cancel;
- reconciler: beat's reconciler;
- common: the constants and helpers several of them share.

Callers import the module they use (`from workflows.services import echo`, then
`echo.echo_run(...)`). This package re-exports nothing: a name is found, and patched in a
test, only in the module whose functions read it, and patching `workflows.services.NAME`
fails at once rather than replacing a name no stage reads."""
