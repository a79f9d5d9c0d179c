-- Nothing to restore: the deleted rows were short-lived throttling state.
SELECT 1;
