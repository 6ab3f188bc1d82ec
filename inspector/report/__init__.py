"""Turn results into output: rich renderables for people, JSON for machines, markdown for PR
comments, GitHub workflow annotations for CI logs. Nothing here reads files or decides anything."""
