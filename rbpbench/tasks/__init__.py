"""The paper's tasks, registered through the plugin host like any third party's."""
