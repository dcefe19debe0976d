"""Plan catalog and tiers, subscriptions and plan-change requests, metering, usage
summary and budget alerts."""
