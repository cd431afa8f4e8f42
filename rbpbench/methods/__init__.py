"""The paper's five gradient methods, registered through the plugin host like any third party's."""
