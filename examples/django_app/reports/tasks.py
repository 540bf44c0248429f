"""A long task of the project's own app, declared as reusable Django apps declare tasks."""

import time

from celery import shared_task

from taskcast import ProgressTask


@shared_task(bind=True, base=ProgressTask)
def build_report(self, rows: int = 20, delay: float = 0.1) -> dict:
    self.status("processing", "Collecting rows")
    for row in range(1, rows + 1):
        time.sleep(delay)  # stands in for real work
        self.progress(current=row, total=rows, message=f"Row {row} of {rows}")
    return {"rows": rows}
