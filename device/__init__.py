"""voice-appliance: firmware for a Raspberry Pi kiosk that talks with an ElevenLabs agent."""

__version__ = "0.2.0"
