"""The domain: delegation decisions, the audit trail, policy engines and stores."""
