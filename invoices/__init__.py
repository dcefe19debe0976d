"""Invoices and lines, numbering, period close, PDFs, the credit ledger, payments and
payment methods, cost breakdown and CSV exports."""
