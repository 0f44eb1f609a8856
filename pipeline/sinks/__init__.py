"""Where results go: label maps, segmented images and masks (``segment``, ``images``),
model.json (``model``), the report's page, thumbnails and palette files (``report``)."""
